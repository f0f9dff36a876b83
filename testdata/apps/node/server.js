const http = require("http");
http.createServer((req, res) => {
  res.end(`hello from node version=${process.env.VERSION || ""}\n`);
}).listen(process.env.PORT, () => console.log(`listening on ${process.env.PORT}`));
