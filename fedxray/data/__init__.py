"""Local datasets: labels, pseudonyms, shards and their preparation."""
