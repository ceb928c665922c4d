return function(x) return { half = x / 2, bytes = "\1\2\255" } end
