"""`posttrain eval`: reward-model accuracy, win-rate of one model over another, perplexity, instruction keeping,
lm-evaluation-harness tasks and the toxicity and sentiment of replies; one JSON report each."""
