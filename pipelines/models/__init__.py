"""Model handling, split the InvokeAI way: the catalog (what exists, where from,
licence, hash), the store (download, verify, convert) and the loaders/caches
that own what is in memory now (see `pipelines.engine`)."""
