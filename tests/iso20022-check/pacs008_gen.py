"""Generates a pacs.008 with the `pacs008` package (PyPI), validated by
that package against the message version's XSD, for tests/iso20022.rs and
the README example: an independent writer of the messages fraudline reads.

    python3 pacs008_gen.py VERSION ROWS.json > message.xml

ROWS.json is a list of the package's row dicts (one per CdtTrfTxInf; the
group header comes from the first). Exit 1 with the package's message when
it refuses the rows or its XSD refuses the XML.
"""
import json
import os
import sys

import pacs008
from pacs008.xml.generate_xml import generate_xml_string


def main() -> int:
    version, rows_file = sys.argv[1], sys.argv[2]
    with open(rows_file, encoding="utf-8") as f:
        rows = json.load(f)
    base = os.path.join(os.path.dirname(pacs008.__file__), "templates", version)
    # The package checks that paths lie under the working directory.
    os.chdir(base)
    xml = generate_xml_string(rows, version, "template.xml", f"{version}.xsd")
    sys.stdout.write(xml)
    return 0


if __name__ == "__main__":
    sys.exit(main())
