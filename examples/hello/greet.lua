local function greet(name)
    return "hello, " .. (name or "world")
end

return { greet = greet }
