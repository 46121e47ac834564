"""curbwatch: street-violation detection from city cameras."""
