// Answers with a greeting for GET and echoes the JSON body of a POST, as Fission's Node.js
// functions do: the context holds the request, the returned object is the response.
module.exports = async function (context) {
  const request = context.request;
  if (request.method === "POST") {
    return { status: 200, headers: { "content-type": "application/json" }, body: { received: request.body } };
  }
  const name = (request.query && request.query.name) || "world";
  return { status: 200, body: `hello, ${name}\n` };
};
