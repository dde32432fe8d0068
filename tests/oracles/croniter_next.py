"""The croniter oracle for Kairos's crontab schedules (used by services/core/tests/oracles.rs).

Reads one JSON query per line from stdin -- {"expr", "tz", "from" (RFC 3339), "count"} -- and
writes one JSON answer per line: {"times": [RFC 3339 UTC, ...]} or {"error": "..."}. croniter
reads 5-field expressions as Vixie cron does (day-of-month OR day-of-week when both are
restricted), in the zone of the start time it is given.
"""

import json
import sys
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from croniter import croniter


def answer(query):
    zone = ZoneInfo(query["tz"])
    start = datetime.fromisoformat(query["from"].replace("Z", "+00:00")).astimezone(zone)
    # implement_cron_bug: a day field that begins with `*` (`*/2`) leaves the days to the other
    # field, as Vixie cron and cronie decide it (entry.c sets DOM_STAR on the first character).
    times = croniter(query["expr"], start, implement_cron_bug=True)
    out = []
    for _ in range(query["count"]):
        t = times.get_next(datetime).astimezone(timezone.utc)
        out.append(t.strftime("%Y-%m-%dT%H:%M:%SZ"))
    return {"times": out}


def main():
    for line in sys.stdin:
        try:
            result = answer(json.loads(line))
        except Exception as error:  # every answer is one line, whatever went wrong
            result = {"error": f"{type(error).__name__}: {error}"}
        sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
