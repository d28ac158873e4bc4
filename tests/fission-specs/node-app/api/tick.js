// Run by the TimeTrigger: what it logs is in `gust fn logs ticker`.
module.exports = async function () {
  console.log("node tick");
  return { status: 200, body: "ticked\n" };
};
