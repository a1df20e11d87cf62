"""Lightning callbacks: progress, throughput, checkpoints, control, anomalies, alerts, monitoring."""
