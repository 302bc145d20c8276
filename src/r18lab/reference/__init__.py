"""Published numbers we compare against, as data (one module per paper and table group)."""
