"""protobuf's own JSON printer and parser, for tests/inline_json.rs.

  proto3_json.py DESCRIPTORS print N SEED   N PaymentEvents, one JSON line each:
      {"camel": <json_format.MessageToJson>, "names": <... preserving_proto_field_name>,
       "nulls": <the names form with every absent field as null>, "binary": <base64>}
  proto3_json.py DESCRIPTORS parse          verdict JSON lines on stdin, each parsed
      strictly (no unknown fields) into fraudline.v1.Verdict; prints
      {"event_id", "decision", "score", "decided_at_ms"} per line.

DESCRIPTORS is the FileDescriptorSet fraudline is built with (the .proto files
compiled by prost-build), so no protoc is needed.
"""
import base64
import json
import random
import sys
import time

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory


def classes(path):
    fds = descriptor_pb2.FileDescriptorSet.FromString(open(path, "rb").read())
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:
        pool.Add(f)
    get = lambda n: message_factory.GetMessageClass(pool.FindMessageTypeByName(n))
    return get("fraudline.v1.PaymentEvent"), get("fraudline.v1.Verdict")


def with_nulls(names_json):
    d = json.loads(names_json)
    for f in ["device_id", "ip", "phone", "country", "merchant_category", "geo",
              "channel", "payment_type", "attributes"]:
        d.setdefault(f, None)
    for p in ["payer", "payee"]:
        d[p].setdefault("bank_code", None)
        d[p].setdefault("kind", None)
    return json.dumps(d)


def main():
    Event, Verdict = classes(sys.argv[1])
    if sys.argv[2] == "print":
        n, rnd = int(sys.argv[3]), random.Random(int(sys.argv[4]))
        now = int(time.time() * 1000)
        for i in range(n):
            e = Event()
            e.event_id = f"py-{sys.argv[4]}-{i}"
            e.event_time_ms = now - rnd.randrange(0, 3_600_000)
            e.payer.account = str(rnd.randrange(10**9, 10**10))
            if rnd.random() < 0.7:
                e.payer.bank_code = rnd.choice(["VCB", "TCB", "BIDV"])
            e.payer.kind = rnd.choice([0, 1, 2])
            e.payee.account = str(rnd.randrange(10**9, 10**10))
            if rnd.random() < 0.5:
                e.payee.bank_code = rnd.choice(["MOMO", "ACB"])
            e.payee.kind = rnd.choice([0, 1, 2, 3])
            e.amount_minor = rnd.choice([1, 1000, 7216000, 2**40 + 7, 10**15])
            e.currency = rnd.choice(["VND", "USD", "EUR"])
            e.channel = rnd.randrange(0, 7)
            e.payment_type = rnd.randrange(0, 6)
            if rnd.random() < 0.6:
                e.device_id = f"dev-{rnd.randrange(1000)}"
            if rnd.random() < 0.5:
                e.ip = f"10.0.{rnd.randrange(256)}.{rnd.randrange(256)}"
            if rnd.random() < 0.5:
                e.phone = f"+8490{rnd.randrange(10**7):07d}"
            if rnd.random() < 0.4:
                e.geo.lat = rnd.uniform(-90, 90)
                e.geo.lon = rnd.uniform(-180, 180)
            if rnd.random() < 0.5:
                e.country = "VN"
            if rnd.random() < 0.3:
                e.merchant_category = "5411"
            for k in range(rnd.randrange(0, 3)):
                e.attributes[f"k{k}"] = rnd.choice(["true", "false", "x y", "ü"])
            names = json_format.MessageToJson(e, preserving_proto_field_name=True, indent=None)
            print(json.dumps({
                "camel": json_format.MessageToJson(e, indent=None),
                "names": names,
                "nulls": with_nulls(names),
                "binary": base64.b64encode(e.SerializeToString()).decode(),
            }))
    else:
        for line in sys.stdin:
            v = json_format.Parse(line, Verdict())
            print(json.dumps({
                "event_id": v.event_id,
                "decision": Verdict.DESCRIPTOR.fields_by_name["decision"].enum_type
                .values_by_number[v.decision].name,
                "score": v.score,
                "decided_at_ms": v.decided_at_ms,
            }))


if __name__ == "__main__":
    main()
