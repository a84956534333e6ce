from probekit.cli import main

main()
