-- Argo CD health check for continuum.dev/EdgeWorkload, built on the status the operator writes:
-- status.phase (Placed | Unschedulable | Invalid), status.conditions Placed and Ready, and
-- status.observedGeneration. Healthy when placed and ready, Progressing while being placed or moved
-- (or before the operator has seen the current spec), Degraded when unschedulable or invalid.
local hs = {}

local function condition(status, ctype)
  if status.conditions ~= nil then
    for _, c in ipairs(status.conditions) do
      if c.type == ctype then
        return c
      end
    end
  end
  return nil
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Continuum operator to place the workload"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the Continuum operator to observe generation " .. tostring(generation)
  return hs
end

local placed = condition(status, "Placed")
local ready = condition(status, "Ready")

if status.phase == "Invalid" then
  hs.status = "Degraded"
  hs.message = status.message or (placed ~= nil and placed.message) or "Invalid spec"
  return hs
end

if status.phase == "Unschedulable" then
  hs.status = "Degraded"
  local message = (placed ~= nil and placed.message) or status.message or "No pool can host the workload"
  if status.hint ~= nil then
    message = message .. " (hint: " .. status.hint .. ")"
  end
  hs.message = message
  return hs
end

if status.phase == "Placed" then
  if placed ~= nil and placed.status == "True" and ready ~= nil and ready.status == "True" then
    hs.status = "Healthy"
    local where = ""
    if status.placement ~= nil then
      where = " on pool " .. tostring(status.placement.pool) .. " (" .. tostring(status.placement.tier) .. ")"
    end
    hs.message = "Placed" .. where .. ((ready.message ~= nil and (", " .. ready.message)) or "")
    return hs
  end
  hs.status = "Progressing"
  if placed ~= nil and placed.status ~= "True" then
    hs.message = placed.message or placed.reason or "Placing"
  elseif ready ~= nil then
    hs.message = ready.message or ready.reason or "Waiting for replicas"
  else
    hs.message = "Placing"
  end
  return hs
end

hs.status = "Unknown"
hs.message = "Unknown phase " .. tostring(status.phase)
return hs
