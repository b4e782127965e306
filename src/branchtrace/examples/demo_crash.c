/* The demo branchtrace ships: a small program that crashes.
 * It looks a user up in a table; the lookup fails, returns NULL, and the caller
 * writes through it. `branchtrace demo` shows the branches that led there. */
#include <stddef.h>
#include <string.h>

struct user { const char *name; int visits; };

static struct user users[] = { {"ada", 3}, {"grace", 5}, {"linus", 1} };

static struct user *find_user(const char *name)
{
    for (size_t i = 0; i < sizeof users / sizeof users[0]; i++)
        if (strcmp(users[i].name, name) == 0)
            return &users[i];
    return NULL;
}

static void record_visit(const char *name)
{
    struct user *u = find_user(name);
    u->visits++;                        /* crashes when the user is unknown */
}

int main(int argc, char **argv)
{
    record_visit("grace");
    record_visit(argc > 1 ? argv[1] : "margaret");
    return 0;
}
