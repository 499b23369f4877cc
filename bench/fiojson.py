#!/usr/bin/env python3
"""Print the figures bench/run.sh needs from one fio --output-format=json file.

    fiojson.py FILE read|write

prints one line: IOPS, bandwidth in MiB/s, completion latency p50 and p99 in
microseconds (summed over the jobs of the first group, percentiles of the
first job). Exits 1 if fio reported an error.
"""
import json
import sys


def main():
    path, rw = sys.argv[1], sys.argv[2]
    with open(path) as f:
        text = f.read()
    # fio may print warnings before the JSON document.
    data = json.loads(text[text.index("{"):])
    jobs = data["jobs"]
    if any(j.get("error", 0) for j in jobs):
        sys.exit("fio reported error %s" % [j.get("error") for j in jobs])
    iops = sum(j[rw]["iops"] for j in jobs)
    bw_mib = sum(j[rw]["bw"] for j in jobs) / 1024.0  # fio's bw is KiB/s
    pct = jobs[0][rw].get("clat_ns", {}).get("percentile", {})
    p50 = pct.get("50.000000", 0) / 1000.0
    p99 = pct.get("99.000000", 0) / 1000.0
    print("%.0f %.1f %.1f %.1f" % (iops, bw_mib, p50, p99))


if __name__ == "__main__":
    main()
