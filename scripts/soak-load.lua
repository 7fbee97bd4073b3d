-- The soak's load (scripts/soak.sh), one wrk per kind and instance:
--   wrk ... -s scripts/soak-load.lua http://host:port -- read  <users file> <pause ms>
--   wrk ... -s scripts/soak-load.lua http://host:port -- write <users file> <pause ms> <service token>
-- The users file holds "<user> <token>" per line. A reader GETs the effective configuration as
-- each user in turn; a writer PUTs each user's own configuration in turn (the soak gives the two
-- disjoint sets of users: see scripts/soak.sh). Each connection pauses <pause ms> before each request: the load is
-- paced (a rate the fleet sustains), not as fast as it goes, which would leave the machine no
-- idle time at all. Each failure goes to stderr as
-- "failed <kind> <unix time> status <status> <problem document>".
local kind, users, tokens, pause_ms, service, n = "read", {}, {}, 0, nil, 0

function init(args)
  kind, pause_ms, service = args[1], tonumber(args[3]), args[4]
  for line in io.lines(args[2]) do
    local user, token = line:match("^(%S+) (%S+)$")
    users[#users + 1], tokens[#tokens + 1] = user, token
  end
  -- Threads and processes start at different users.
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)") or "0", 16))
  n = math.random(#users)
end

function request()
  n = n + 1
  local i = n % #users + 1
  if kind == "read" then
    return wrk.format("GET", "/v1/tenants/demo/config/effective",
      { Authorization = "Bearer " .. tokens[i] })
  end
  return wrk.format("PUT", "/v1/tenants/demo/users/" .. users[i] .. "/config",
    { Authorization = "Bearer " .. service, ["Content-Type"] = "application/json" },
    string.format('{"mergeMaxMessages": %d}', n % 100 + 1))
end

function delay()
  return pause_ms
end

function response(status, headers, body)
  if status ~= 200 then
    io.stderr:write(string.format("failed %s %d status %d %s\n", kind, os.time(), status, body:sub(1, 200)))
  end
end
