from remote_introspect.cli import main

main()
