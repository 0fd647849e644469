# shellcheck shell=bash
# The command the cold-start benchmarks run in each image, and the output that
# proves it ran (sourced, not run).

declare -A CMD_DESC EXPECT
CMD_DESC[python]="python3 -c 'print(1)'"
CMD_DESC[gcc]="gcc hello.c && ./hello"
CMD_DESC[node]="node -e 'console.log(1)'"
EXPECT[python]=1 EXPECT[gcc]=hello EXPECT[node]=1
image_cmd() { # sets CMD=(...)
    case $1 in
    python) CMD=(python3 -c 'print(1)') ;;
    node) CMD=(node -e 'console.log(1)') ;;
    gcc) CMD=(sh -c 'printf "#include <stdio.h>\nint main(void){puts(\"hello\");return 0;}\n" >/tmp/hello.c && gcc -o /tmp/hello /tmp/hello.c && /tmp/hello') ;;
    esac
}
