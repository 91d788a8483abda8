"""Session-wide test set-up."""

# Lightning adds its console log handler on the stream that is sys.stderr at its first import. Imported here,
# that is pytest's session-long capture; imported first inside a test using capsys, it would be that test's
# stream, closed when the test ends, and every later Lightning log line would print a "Logging error" trace.
import lightning.pytorch  # noqa: F401
