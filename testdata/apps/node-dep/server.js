const http = require("http");
const isNumber = require("is-number");
http.createServer((req, res) => {
  res.end(`hello from node-dep is-number(42)=${isNumber(42)}\n`);
}).listen(process.env.PORT, () => console.log(`listening on ${process.env.PORT}`));
