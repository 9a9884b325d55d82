-- wrk script for scenario 5: cycles through BENCH_KEYS caller keys named
-- "<BENCH_PREFIX>-key-<i>-0123456789abcdef" (as `tools.py clients` makes them), each wrk thread
-- starting at its own offset. Requests are formatted once in init(), not per request.
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_no", threads)
end

local reqs, i, n

function init(args)
  n = tonumber(os.getenv("BENCH_KEYS") or "1")
  local prefix = os.getenv("BENCH_PREFIX") or "s5"
  reqs = {}
  for k = 0, n - 1 do
    reqs[k + 1] = wrk.format("GET", "/iam/clients/me",
      { ["Authorization"] = "APIKey " .. prefix .. "-key-" .. k .. "-0123456789abcdef" })
  end
  i = ((thread_no or 1) - 1) * 7919 % n
end

function request()
  i = i % n + 1
  return reqs[i]
end
