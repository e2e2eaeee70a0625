"""The slowest tests of a pytest JUnit XML file, one line each, for a device call's $OUT.

    python3 benchmarks/junit_times.py FILE [N]
"""
import sys
import xml.etree.ElementTree as ET


def main(path: str, n: int = 25) -> None:
    cases = [(float(c.get("time", 0)), f"{c.get('classname')}::{c.get('name')}")
             for c in ET.parse(path).iter("testcase")]
    cases.sort(reverse=True)
    print(f"== {path}: {len(cases)} tests, {sum(t for t, _ in cases):.1f} s; the slowest {min(n, len(cases))}")
    for t, name in cases[:n]:
        print(f"{t:8.2f} s  {name}")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:3]))
