def render(labels: dict[str, str]) -> bytes:
    """NFD feature-file lines, `key=value`, sorted so identical label sets give identical bytes."""
    return "".join(f"{k}={v}\n" for k, v in sorted(labels.items())).encode("utf-8")
