"""The online side of ledrec: events, user state, consumer, scorer, RPC."""
