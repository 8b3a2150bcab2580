-- wrk script: single-event Plausible requests from many visitors (distinct
-- X-Forwarded-For addresses; the gateway trusts 127.0.0.1 as a proxy). Requests are
-- built once, up front, so wrk's own CPU goes to sending, not to Lua.
local paths = {"/", "/pricing", "/docs", "/blog/launch", "/about", "/signup"}
local ua = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0"
local pool = {}
local size = 20000
local n = 0

init = function(args)
  for i = 1, size do
    local ip = string.format("10.%d.%d.%d", math.floor(i / 65536) % 256, math.floor(i / 256) % 256, i % 256)
    local body = string.format('{"n":"pageview","u":"https://example.com%s","d":"example.com","r":"https://www.google.com/"}', paths[(i % #paths) + 1])
    pool[i] = wrk.format("POST", "/api/event", {["Content-Type"] = "text/plain", ["User-Agent"] = ua, ["X-Forwarded-For"] = ip}, body)
  end
end

request = function()
  n = n % size + 1
  return pool[n]
end
