from mcpbridge.cli import main

main()
