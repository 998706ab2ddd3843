"""The artifacts of a compile: report.json, placement.json, trace.json, the pictures, program.json (the IR that
`wsc run` executes again) and the independent checker of placement.json."""

# The files a compile writes into its output folder. A folder holding any of them holds a compile's output;
# reference.safetensors only when the compile verified the program and its outputs are small enough to keep.
OUTPUT_FILES = ("report.json", "placement.json", "trace.json", "report.html", "program.json", "reference.safetensors")
