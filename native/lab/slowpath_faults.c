/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * The lab's build of the slow path's extension, hyperion.lab._slowpath_faults: the
 * product's module.c with its fault hook compiled in (a control-block flag stops the
 * fill ring's refilling; hyperion.lab.faultworker sets it on SIGUSR1). A file of its
 * own, so its object never stands in for the product's module.o.
 */
#define HYP_FAULT_INJECTION 1
#include "module.c"
