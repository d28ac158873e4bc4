# A Fission Python function, unmodified: Fission's Python environment calls main() with
# Flask's request in scope; Gust's calls it the same way.
def main():
    return "hello from a fission spec\n"
