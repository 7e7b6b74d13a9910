#!/usr/bin/env python3
"""Writes the committed seed corpora (fuzz/corpus/<target>/) and the
dictionaries (fuzz/dict/*.dict) from the repository's own fixtures: the
default rule pack, the README's example events, the k8s example blocklist,
the feature catalogue and the rule language's names.

Deterministic, standard library only, no build needed:
    python3 fuzz/seeds/make_seeds.py
Every account number here is synthetic test data.
"""

import json
import pathlib
import re
import shutil
import struct
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]
FUZZ = ROOT / "fuzz"
T = 1795514678561  # 2026-11-24, before the targets' fixed clock (2027-01-15)


# ----------------------------------------------------------------- protobuf

def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num, wire, payload):
    return varint(num << 3 | wire) + payload


def pb_str(num, s):
    b = s.encode() if isinstance(s, str) else s
    return field(num, 2, varint(len(b)) + b) if b else b""


def pb_int(num, n):
    return field(num, 0, varint(n)) if n else b""


def pb_msg(num, body):
    return field(num, 2, varint(len(body)) + body)


def pb_double(num, x):
    return field(num, 1, struct.pack("<d", x))


KINDS = {"ACCOUNT": 1, "EWALLET": 2, "CARD": 3}
CHANNELS = {"MOBILE": 1, "WEB": 2, "ATM": 3, "BRANCH": 4, "POS": 5, "API": 6}
TYPES = {"TRANSFER": 1, "BILL": 2, "MERCHANT": 3, "CASH_OUT": 4, "TOP_UP": 5}


def pb_party(p):
    return (pb_str(1, p.get("account", "")) + pb_str(2, p.get("bank_code", ""))
            + pb_int(3, KINDS.get(p.get("kind", ""), 0)))


def pb_event(e):
    out = pb_str(1, e.get("event_id", "")) + pb_int(2, e.get("event_time_ms", 0))
    if "payer" in e:
        out += pb_msg(3, pb_party(e["payer"]))
    if "payee" in e:
        out += pb_msg(4, pb_party(e["payee"]))
    out += pb_int(5, e.get("amount_minor", 0)) + pb_str(6, e.get("currency", ""))
    out += pb_int(7, CHANNELS.get(e.get("channel", ""), 0))
    out += pb_int(8, TYPES.get(e.get("payment_type", ""), 0))
    for num, key in [(9, "device_id"), (10, "ip"), (11, "phone")]:
        out += pb_str(num, e.get(key, ""))
    if "geo" in e:
        out += pb_msg(12, pb_double(1, e["geo"]["lat"]) + pb_double(2, e["geo"]["lon"]))
    out += pb_str(13, e.get("country", "")) + pb_str(14, e.get("merchant_category", ""))
    for k, v in sorted(e.get("attributes", {}).items()):
        out += pb_msg(15, pb_str(1, k) + pb_str(2, v))
    return out


def pb_list_entry(kind="", value="", action="", reason="", source="", added=0, expires=0):
    return (pb_str(1, kind) + pb_str(2, value) + pb_str(3, action) + pb_str(4, reason)
            + pb_str(5, source) + pb_int(6, added) + pb_int(7, expires))


# ----------------------------------------------------------------- payments

BASE = {
    "event_id": "tx-1", "event_time_ms": T,
    "payer": {"account": "1000003422", "bank_code": "VCB", "kind": "ACCOUNT"},
    "payee": {"account": "8960134909", "bank_code": "MOMO", "kind": "EWALLET"},
    "amount_minor": 7216000, "currency": "VND", "channel": "MOBILE",
    "payment_type": "TRANSFER", "device_id": "dev-3422", "phone": "+84900003422",
    "country": "VN",
}


def variant(**kw):
    e = json.loads(json.dumps(BASE))
    for k, v in kw.items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = v
    return e


VALID = [
    BASE,
    variant(event_id="tx-2", payer={"account": "1000003422"},
            payee={"account": "8960134909", "kind": "EWALLET"}, channel=None,
            payment_type=None, device_id=None, phone=None, country=None),
    variant(event_id="tx-geo", geo={"lat": 10.776389, "lon": 106.701944}, ip="203.0.113.9",
            merchant_category="7995", attributes={"merchant_name": "Lucky Casino", "mcc": "7995"}),
    variant(event_id="tx-card", payer={"account": "4000000000000002", "bank_code": "TCB", "kind": "CARD"},
            channel="POS", payment_type="MERCHANT", amount_minor=1000, currency="EUR"),
    variant(event_id="tx-big", amount_minor=1000000000000000, channel="API", payment_type="CASH_OUT"),
    variant(event_id="tx-edge", geo={"lat": -90.0, "lon": 180.0}, channel="ATM", payment_type="TOP_UP"),
]
INVALID = [
    variant(event_id=None),
    variant(event_time_ms=None),
    variant(event_time_ms=1795514678),          # seconds, not ms
    variant(event_time_ms=4102444800000),       # far in the future
    variant(amount_minor=0),
    variant(amount_minor=-5),
    variant(currency="XXQ"),
    variant(currency=None),
    variant(payer=None),
    variant(payee={"account": " "}),
    variant(geo={"lat": 91.0, "lon": 0.0}),
    variant(device_id="d" * 300),
    variant(attributes={f"k{i}": "v" for i in range(70)}),
]
JSON_ONLY = [
    # enums spelled the other accepted ways, and refused ones
    dict(variant(event_id="tx-e1"), channel="CHANNEL_WEB", payment_type="payment_type_bill",
         payer={"account": "1", "kind": "ACCOUNT_KIND_CARD"}, payee={"account": "2", "kind": "e-wallet"}),
    dict(variant(event_id="tx-e2"), channel="mobile", payment_type="top-up"),
    dict(variant(event_id="tx-e3"), channel="TELEPATHY"),
    dict(variant(event_id="tx-e4"), payee={"account": "2", "kind": "SAFE"}),
    dict(variant(event_id="tx-lbl"), label="mule_fan_in", unknown_field=[1, {"x": None}]),
]


def json_bytes(e, **kw):
    return json.dumps(e, separators=(",", ":"), **kw).encode()


# ----------------------------------------------------------------- corpora

def write(target, name, data):
    d = FUZZ / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def decode_json():
    for i, e in enumerate(VALID):
        write("decode_json", f"valid-{i}.json", json_bytes(e))
    for i, e in enumerate(INVALID):
        write("decode_json", f"invalid-{i}.json", json_bytes(e))
    for i, e in enumerate(JSON_ONLY):
        write("decode_json", f"spelling-{i}.json", json_bytes(e))
    write("decode_json", "pretty.json", json.dumps(VALID[2], indent=2, ensure_ascii=True))
    write("decode_json", "escapes.json",
          json_bytes(variant(event_id="tx-\u00e9\\\"\u0000", device_id="\ud83d\ude00")))
    write("decode_json", "not-utf8.json", b'{"event_id":"\xff\xfe"}')
    write("decode_json", "truncated.json", json_bytes(BASE)[:60])
    write("decode_json", "array.json", b"[1,2,3]")
    write("decode_json", "nested.json", b'{"attributes":' + b'{"a":' * 40 + b"1" + b"}" * 41)


def decode_protobuf():
    for i, e in enumerate(VALID):
        write("decode_protobuf", f"valid-{i}.pb", pb_event(e))
    for i, e in enumerate(INVALID):
        write("decode_protobuf", f"invalid-{i}.pb", pb_event(e))
    b = pb_event(BASE)
    write("decode_protobuf", "truncated.pb", b[: len(b) // 2])
    write("decode_protobuf", "bad-utf8.pb", pb_str(1, b"\xff\xfe") + b[len(pb_str(1, "tx-1")):])
    write("decode_protobuf", "unknown-fields.pb", b + field(99, 0, varint(7)) + pb_str(100, "x"))
    write("decode_protobuf", "negative-enum.pb", b + field(7, 0, varint(-1)))
    write("decode_protobuf", "group.pb", bytes([0x7B]) + b)   # JSON's "{" as a tag
    write("decode_protobuf", "repeated-party.pb", b + pb_msg(3, pb_str(2, "TCB")))


def rules():
    default = (ROOT / "deploy/rules/default.toml").read_text()
    write("rules", "default.toml", default)
    small = '''version = "fuzz-1"

[thresholds]
review = 40
hold = 80

[settings]
utc_offset_minutes = 0
home_country = "VN"
round_unit_minor = 1000000

[lists]
high_risk_mcc = ["7995", "5967"]

[[rule]]
id = "MULE_FAN_IN"
description = "A payee collecting from many payers it has never been paid by"
when = "payee.distinct_payers_10m >= 8 && amount >= 2_000_000 && payer.new_payee"
score = 60
reason = "Payee collects from many new payers"
mode = "active"
tags = ["mule"]
owner = "fraud-ops"
max_hit_rate = 0.02

[[rule]]
id = "CASINO"
when = """
  lower(attributes["merchant_name"]).contains("casino")
  || in_list("high_risk_mcc", merchant_category)
"""
decision = "REVIEW"
reason = "Gambling merchant"
mode = "shadow"

[[rule]]
id = "LISTED_DEVICE"
when = 'blocklisted(device) && blocklist_action(device) == "HOLD"'
decision = "HOLD"
reason = "Device on the list"

[[test]]
name = "a fan-in payment is held"
event = { event_id = "t1", event_time_ms = 1795526680451, amount_minor = 5000000, currency = "VND", payer = { account = "1" }, payee = { account = "2" } }
features = { "payee.distinct_payers_10m" = 9, "payer.new_payee" = 1 }
expect = "REVIEW"
hits = ["MULE_FAN_IN"]

[[test]]
name = "a fresh payment passes"
event = { event_id = "t2", event_time_ms = 1795526680451, amount_minor = 1000, currency = "EUR", payer = { account = "1" }, payee = { account = "3" }, merchant_category = "7995" }
expect = "ALLOW"
shadow_hits = ["CASINO"]
'''
    write("rules", "small.toml", small)
    write("rules", "errors.toml", small.replace('score = 60', 'score = 6000')
          .replace('"MULE_FAN_IN"\n', '"MULE FAN IN"\n', 1)
          .replace("amount >= 2_000_000", "amount >= = 2_000_000 and payer.nwe_payee"))
    write("rules", "minimal.toml", 'version = "1"\n[thresholds]\nreview = 1\nhold = 1\n')
    write("rules", "not-toml.toml", "version = \n[[rule]\n")
    conf = (ROOT / "deploy/k8s/configmap-rules.yaml").read_text()
    m = re.search(r"\|\n((?:    .*\n|\n)+)", conf)
    text = "\n".join(l[4:] for l in m.group(1).splitlines()) + "\n" if m else ""
    if text.strip() and text.strip() != default.strip():
        write("rules", "configmap.toml", text)


def conditions():
    pack = tomllib.loads((ROOT / "deploy/rules/default.toml").read_text())
    whens = [r["when"] for r in pack["rule"]]
    whens += [
        'payee.distinct_payers_10m >= 8 && amount >= 2_000_000 && payer.new_payee',
        'channel in ["MOBILE", "WEB"] && !(country == "VN") ? cross_border : false',
        'lower(attributes["merchant_name"]).contains("casino") || blocklisted(device)',
        'blocklist_source(payee) == "internal" && amount < 1_000_000',
        'blocklist_kind(payer) == "account" || blocklist_action(phone) != "HOLD"',
        'in_list("high_risk_mcc", merchant_category) && round_amount && hour >= 22',
        'size(attributes.x) > 0 && size([1, 2, 3]) == 3 && max(1, amount, -2.5e3) % 7 != 0',
        'present(payer.amount_zscore) && abs(payer.amount_zscore) > 3 || payer.new_device == null',
        'payer.account.startsWith("100") && payee.kind == "EWALLET" && payee.bank_code.ends_with("MO")',
        "ip.endsWith('.7') && phone != '' && device_id.lower_ascii() == 'dev-7'",
        'min(payer.sum_1h / 0, payer.count_1h - -1) < 1 / 3',
        'currency == "VND" && payment_type in ["TRANSFER", "CASH_OUT"] && 1 in [1.0, 2]',
        'payer.count_1m >= 5 ? payee.age_secs < 86_400 : in_list("vip", payer.account)',
        'amount = 5',
        'payer.nwe_payee && amount > "x"',
        '"\\u00e9\\x41\\n" == lower("É")',
    ]
    for i, w in enumerate(whens):
        write("rule_expr", f"cond-{i:02}.cel", w)


def blocklists():
    csv = ("kind,value,action,reason,source,added_at_ms,expires_at_ms\n"
           "account,9704000000000001,HOLD,reported mule account,example,,\n"
           "phone,+84900000001,REVIEW,scam call reports,example,1795514678561,\n"
           "phone,0900 000 002,,,,,\n"
           'ewallet,"MOMO:0900000003",HOLD,"quoted, with ""quotes""",internal,,4102444800000\n'
           "device,dev-7,review,,,,\n"
           "ip,2001:db8::1,HOLD,,,,\n"
           "card,4000-0000-0000-0002,HOLD,,,,\n"
           "# a comment\n\n"
           "account,VCB:123456,HOLD,,,,\n")
    write("blocklist", "file.csv", b"\x00" + csv.encode())
    write("blocklist", "file-cc.csv", b"\x10" + csv.encode())
    write("blocklist", "tolerant.csv", b"\x0c" + csv.encode() + b"nokind,1,HOLD,,,,\nphone,,HOLD,,,,\n"
          b"account,9704000000000001,REVIEW,conflict,,,\n\xff\xfe,x\n")
    write("blocklist", "reordered.csv", b"\x04value,KIND\n12345678,account\n  +84 90 1 ,phone\n")
    write("blocklist", "no-header.csv", b"\x00account,1\n")
    write("blocklist", "half-written.csv", b"\x00kind,value\naccount,1")
    conf = (ROOT / "deploy/k8s/configmap-blocklist.yaml").read_text()
    m = re.search(r"\|\n((?:    .*\n)+)", conf)
    if m:
        write("blocklist", "configmap.csv", b"\x00" + "".join(l[4:] + "\n" for l in m.group(1).splitlines()).encode())
    jl = [
        {"kind": "account", "value": "9000000001", "reason": "national list", "source": "national-scheme"},
        {"kind": "ewallet", "value": "MOMO:0900000004", "action": "REVIEW", "expires_at_ms": 4102444800000},
        {"kind": "phone", "value": "0084900000005", "added_at_ms": 1795514678561},
        {"kind": "ip", "value": "203.0.113.7", "action": "hold", "reason": "esc\u00e9 \"q\""},
        {"kind": "device", "value": "dev-\u00e9"},
    ]
    body = "".join(json.dumps(x) + "\n" for x in jl)
    write("blocklist", "file.jsonl", b"\x01" + body.encode())
    write("blocklist", "bad.jsonl", b"\x05" + body.encode() + b'{"kind":"x","value":"1"}\n{"kind":"card"}\n[1]\n')
    for i, (key, val) in enumerate([
        ("account:9704000000000001", pb_list_entry("account", "", "HOLD", "pushed", "national-scheme", T)),
        ("ewallet:MOMO:0900000003", pb_list_entry("", "", "REVIEW", "", "", 0, 4102444800000)),
        ("phone:+84 900 000 006", pb_list_entry("phone", "", "", "scam", "internal")),
        ("ip:2001:db8::1", b""),
        ("device:dev-7", pb_list_entry("account")),
        ("nokind", b""),
        ("card: ", b""),
    ]):
        k = key.encode()
        write("blocklist", f"topic-{i}.bin", b"\x02" + bytes([len(k)]) + k + val)
    for i, v in enumerate(["9704 0000-0000 0001", "VCB:123456", "  vcb : 12-34 ", "\u00e9cole", "+84 (0)90 000 0001",
                           "0084900000001", "x" * 120, "1" * 100]):
        write("blocklist", f"key-{i}.txt", b"\x03" + v.encode())
        write("blocklist", f"key-cc-{i}.txt", b"\x13" + v.encode())


def http():
    for i, e in enumerate(VALID + INVALID[:5]):
        write("http_score", f"score-{i}.bin", b"\x00\x00" + json_bytes(e))
    write("http_score", "timeout.bin", b"\x10\x02" + b"20" + json_bytes(VALID[0]))
    write("http_score", "timeout-zero.bin", b"\x10\x01" + b"0" + json_bytes(VALID[1]))
    write("http_score", "timeout-bad.bin", b"\x10\x03" + b"abc" + json_bytes(VALID[1]))
    write("http_score", "no-auth.bin", b"\x02\x00" + json_bytes(VALID[0]))
    write("http_score", "auth-input.bin", b"\x03\x13" + b"Bearer fuzz-token-1" + json_bytes(VALID[2]))
    write("http_score", "form.bin", b"\x08\x00" + json_bytes(VALID[0]))
    write("http_score", "ct-input.bin", b"\x0c\x1fapplication/json; charset=utf-8" + json_bytes(VALID[3]))
    write("http_score", "no-ct.bin", b"\x04\x00" + json_bytes(VALID[4]))
    write("http_score", "get.bin", b"\x40\x00")
    write("http_score", "other.bin", b"\x60\x00{}")
    write("http_score", "retry-differs.bin", b"\x00\x00" + json_bytes(dict(VALID[0], amount_minor=1)))


# ----------------------------------------------------------------- dictionaries

def dictionaries():
    d = FUZZ / "dict"
    d.mkdir(exist_ok=True)
    q = lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
    json_words = ["event_id", "event_time_ms", "payer", "payee", "account", "bank_code", "kind",
                  "amount_minor", "currency", "channel", "payment_type", "device_id", "ip", "phone",
                  "geo", "lat", "lon", "country", "merchant_category", "attributes", "label"]
    enums = list(KINDS) + list(CHANNELS) + list(TYPES) + ["CHANNEL_", "PAYMENT_TYPE_", "ACCOUNT_KIND_",
                                                          "e-wallet", "UNSPECIFIED"]
    lines = [f"k{i}={q(chr(34) + w + chr(34) + ':')}" for i, w in enumerate(json_words)]
    lines += [f"e{i}={q(chr(34) + w + chr(34))}" for i, w in enumerate(enums)]
    lines += [f"t{i}={q(w)}" for i, w in enumerate(["VND", "EUR", "USD", "1795514678561", "-1", "1e308",
                                                     "null", "true", "\\u0000", "\\ud800", "{}", "[]"])]
    (d / "json.dict").write_text("# JSON payment events: keys, enum names, edge values\n" + "\n".join(lines) + "\n")

    cat = (ROOT / "src/engine/features/catalogue.rs").read_text()
    feats = re.findall(r'= "([a-z_]+\.[a-z0-9_]+)", [A-Z]', cat)
    fields = ["amount", "hour", "round_amount", "cross_border", "currency", "channel", "payment_type",
              "country", "merchant_category", "device_id", "phone", "ip", "payer.account",
              "payer.bank_code", "payer.kind", "payee.account", "payee.bank_code", "payee.kind",
              "attributes", "payee", "payer", "device"]
    funcs = ["startsWith", "starts_with", "endsWith", "ends_with", "contains", "lower", "lowerAscii",
             "lower_ascii", "size", "abs", "min", "max", "present", "has", "in_list", "blocklisted",
             "blocklist_action", "blocklist_kind", "blocklist_source"]
    ops = ["&&", "||", "==", "!=", "<=", ">=", " in ", "?", ":", "null", "true", "false", "1_000",
           "2.5e3", "\\u00e9", "high_risk_mcc", "vip"]
    words = feats + fields + funcs + ops
    toml_words = ["version = ", "[thresholds]", "review = ", "hold = ", "[settings]", "utc_offset_minutes",
                  "home_country", "round_unit_minor", "[lists]", "[[rule]]", "id = ", "when = ",
                  "score = ", "decision = ", "reason = ", "mode = ", "shadow", "tags", "owner",
                  "max_hit_rate", "breaker_min_events", "description", "[[test]]", "name = ", "event = ",
                  "features = ", "expect = ", "hits = ", "shadow_hits = ", '"""', "'''"]
    (d / "rule_expr.dict").write_text("# Rule-condition language: names, functions, operators\n"
                                      + "\n".join(f"w{i}={q(w)}" for i, w in enumerate(words)) + "\n")
    (d / "rules.dict").write_text("# Rule files: TOML keys and the condition language\n"
                                  + "\n".join(f"w{i}={q(w)}" for i, w in enumerate(words + toml_words)) + "\n")
    bl = ["kind", "value", "action", "reason", "source", "added_at_ms", "expires_at_ms", "account",
          "ewallet", "card", "phone", "device", "ip", "HOLD", "REVIEW", "+84", "0084", "VCB:", '""',
          '"kind":', '"value":', '"action":']
    (d / "blocklist.dict").write_text("# Blocklist files and topic keys\n"
                                      + "\n".join(f"w{i}={q(w)}" for i, w in enumerate(bl)) + "\n")


if __name__ == "__main__":
    shutil.rmtree(FUZZ / "corpus", ignore_errors=True)
    decode_json()
    decode_protobuf()
    rules()
    conditions()
    blocklists()
    http()
    dictionaries()
    for t in sorted((FUZZ / "corpus").iterdir()):
        print(f"{t.name}: {len(list(t.iterdir()))} seeds")
