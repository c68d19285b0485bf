write_back "$1" "$2" "$3"
