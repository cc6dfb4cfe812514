"""Copy a Ray wheel without the parts the GPU runs never load (Java jars, RLlib, Serve, LLM, the dashboard's web
client), so that it fits the device tool's 64 MiB; RECORD is rewritten to match.

    python benchmarks/gpu/trim_wheel.py /tmp/w/ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl \
        .whl/ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl
"""
import sys
import zipfile

DROP = ("ray/jars/", "ray/rllib/", "ray/serve/", "ray/llm/", "ray/dashboard/client/")
src, dst = sys.argv[1:3]
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
    kept = [i for i in zin.infolist() if not i.filename.startswith(DROP)]
    names = {i.filename for i in kept}
    for i in kept:
        data = zin.read(i.filename)
        if i.filename.endswith(".dist-info/RECORD"):
            lines = [line for line in data.decode().splitlines()
                     if line.split(",")[0] in names or line.split(",")[0].endswith("RECORD")]
            data = ("\n".join(lines) + "\n").encode()
        zout.writestr(i, data, compress_type=zipfile.ZIP_DEFLATED)
