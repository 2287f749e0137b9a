/*
 * clara.h: the header Clara's documentation tells operators to include
 * ("add libnvclara.so to your MAKE file and include clara.h"). With fastio it
 * includes the generated clara_cpd.h, which declares the whole API.
 */
#ifndef FASTIO_CLARA_H
#define FASTIO_CLARA_H

#include "clara_cpd.h"

#endif /* FASTIO_CLARA_H */
