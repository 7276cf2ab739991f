// The one main() of every doctest binary (each tests/<layer>/test_*.cpp links this).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
