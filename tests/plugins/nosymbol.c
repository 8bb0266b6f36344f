/*
 * nosymbol.c - a test shared object that looks like a plugin but exports
 * no jr_plugin descriptor: the loader must say it is not a plugin.
 */
#include "config.h"

/* Exported on purpose, so the object is not empty. */
int not_a_plugin = 1;
