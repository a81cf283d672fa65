"""`doctor`: checks of the driver, the container runtime and the node's Kubernetes set-up, each with a
verdict, what it read and how to fix it. `checks` holds them, `runtime` reads container runtime configs,
`hostfiles` reads any host file (bounded, JSON or TOML, typed access that names the key), `report` prints
the table or JSON (`schema.json`), `cli` is `gpu-feature-discovery doctor` / `nvidia-device-plugin doctor`."""
