"""conformance: refimpl and accel checked against each other, property by property.

Properties are data (`conformance.records.Record`), collected per module family under
`conformance.properties`, and run by one generic runner (`conformance.runner`). The command
line is `python -m conformance`; the same records run under pytest in `tests/conformance`.
"""
