-- wrk script: /v1/events NDJSON batches of 100 events from 100 visitors each.
local lines = {}
for i = 1, 100 do
  lines[i] = string.format('{"site":"example.com","name":"pageview","url":"https://example.com/p/%d?utm_source=bench","referrer":"https://news.ycombinator.com/","visitor":"v%d","props":{"plan":"p%d"}}', i % 17, i, i % 3)
end
wrk.method = "POST"
wrk.path = "/v1/events"
wrk.headers["Content-Type"] = "application/x-ndjson"
wrk.headers["User-Agent"] = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0"
wrk.body = table.concat(lines, "\n") .. "\n"

done = function(summary, latency, requests)
  io.write(string.format("batched events/s: %.0f\n", summary.requests / (summary.duration / 1e6) * 100))
end
