// A Fission Node.js function, unmodified: context.request in, {status, headers, body} out.
module.exports = async function (context) {
  const id = context.request.params && context.request.params.id;
  return { status: 200, headers: { "content-type": "text/plain" }, body: `item ${id} from node\n` };
};
