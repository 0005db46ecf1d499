-- wrk script: POST JSON bodies read from the file named by WRK_BODY_FILE (one body per
-- line), cycling through them so the server sees varied rows. Used by serving_hotpath.py.
local bodies = {}
for line in io.lines(os.getenv("WRK_BODY_FILE")) do
  bodies[#bodies + 1] = line
end
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

request = function()
  i = i % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
