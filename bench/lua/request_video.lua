-- POST /v1/videos with a new image name on every request.
-- Usage: wrk … -s request_video.lua <url> -- PREFIX
local threads = {}
local counter = 0
local prefix = "w"
local headers = {}

function setup(thread)
   thread:set("id", #threads + 1)
   table.insert(threads, thread)
end

function init(args)
   prefix = args[1] .. "-" .. id
   for name, value in pairs(wrk.headers) do
      headers[name] = value
   end
   headers["Content-Type"] = "application/json"
end

function request()
   counter = counter + 1
   local body = '{"img_name": "' .. prefix .. "-" .. counter .. '.png", "source_type": "scene"}'
   return wrk.format("POST", "/v1/videos", headers, body)
end
