-- handler.lua: loaded once by guest/examples/lua.c before the program is frozen; handle(url)
-- runs for every request in a fresh copy of that state.
local f = assert(io.open(SCRIPT_DIR .. "/greeting.txt"))
local greeting = f:read("l")
f:close()

local requests = 0

function handle(url)
  requests = requests + 1 -- always 1: every request starts from the frozen state
  local words = {}
  for w in url:gmatch("[^/?]+") do words[#words + 1] = w end
  return string.format("%s from %s! url=%s words=%d request=%d\n",
    greeting, _VERSION, url, #words, requests), "text/plain"
end
