"""`doctor`: checks of the driver, the container runtime and the node's Kubernetes set-up, each with a
verdict, what it read and how to fix it. `checks` holds them, `runtime` reads container runtime configs,
`report` prints the table or JSON (`schema.json`), `cli` is `gpu-feature-discovery doctor` /
`nvidia-device-plugin doctor`."""
