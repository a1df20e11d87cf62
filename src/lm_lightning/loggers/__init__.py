"""Our Lightning loggers: a CSV logger that resumes in place, and the W&B logger with offline fallbacks."""
