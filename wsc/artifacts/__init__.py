"""The artifacts of a compile: report.json, placement.json, trace.json, the pictures, and the independent checker
of placement.json."""
