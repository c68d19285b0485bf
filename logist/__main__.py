from logist.entry import main

main()
