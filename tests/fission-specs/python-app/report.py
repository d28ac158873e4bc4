import datetime


def main():
    print("report ran at", datetime.datetime.now(datetime.timezone.utc).isoformat())
    return "report done\n"
