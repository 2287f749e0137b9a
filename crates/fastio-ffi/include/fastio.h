/*
 * fastio.h: the C API of fastio under its own name (libfastio.so). The same API as
 * Clara's clara.h / clara_cpd.h, which it includes.
 */
#ifndef FASTIO_H
#define FASTIO_H

#include "clara_cpd.h"

#endif /* FASTIO_H */
