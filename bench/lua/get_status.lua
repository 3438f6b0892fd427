-- GET /v1/videos/<name> for names that exist: img1.png … img<N>.png, at random.
-- Usage: wrk … -s get_status.lua <url> -- N
local threads = {}
local n = 1

function setup(thread)
   thread:set("id", #threads + 1)
   table.insert(threads, thread)
end

function init(args)
   n = tonumber(args[1])
   math.randomseed(os.time() * 100 + id)
end

function request()
   return wrk.format("GET", "/v1/videos/img" .. math.random(1, n) .. ".png")
end
