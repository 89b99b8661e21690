"""`posttrain eval`: reward-model accuracy, win-rate of one model over another, perplexity; one JSON report each."""
