-- Money in minor units (cents), typed as Wippy code usually is.

type Money = {
  amount: integer,
  currency: string,
}

export type Line = {sku: string, qty: integer, unit: Money}

local money = {}

function money.new(amount: number, currency: string?): Money
  return {amount = integer(amount), currency = currency or "EUR"}
end

function money.add(a: Money, b: Money): (Money?, error?)
  if a.currency ~= b.currency then
    return nil, errors.new({
      message = "currency mismatch: " .. a.currency .. " vs " .. b.currency,
      kind = errors.INVALID,
    })
  end
  return money.new(a.amount + b.amount, a.currency)
end

function money.times(m: Money, n: integer): Money
  return money.new(m.amount * n, m.currency)
end

function money.format(m: Money): string
  local sign: string = m.amount < 0 and "-" or ""
  local cents = math.abs(m.amount)
  return string.format("%s%d.%02d %s", sign, cents // 100, cents % 100, m.currency)
end

-- Checks a value from outside (JSON, another node) against the type at run time.
function money.check(v: any): (Money?, string?)
  return Money:is(v)
end

return money
