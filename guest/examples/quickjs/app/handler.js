// handler.js: evaluated once by guest/examples/quickjs before the program is frozen;
// handle() runs for every request in a fresh copy of that state.
let requests = 0;
const started = new Date().getFullYear() > 2000;

function handle(method, url, body) {
  requests += 1; // always 1: every request starts from the frozen state
  const [path, query = ""] = url.split("?");
  const params = Object.fromEntries(
    query.split("&").filter(Boolean).map((kv) => kv.split("="))
  );
  const words = path.split("/").filter(Boolean);
  const info = { method, words: words.length, params, request: requests, started };
  if (method === "POST") info.body = JSON.parse(body);
  return `${GREETING} from QuickJS! ${JSON.stringify(info)}\n`;
}
