#pragma once
// Umbrella header: everything a C++ user of attnkit needs.

#include "attnkit/version.h"
#include "attnkit/types.h"
#include "attnkit/runtime.h"
#include "attnkit/attention.h"
#include "attnkit/backward.h"
#include "attnkit/block_sparse.h"
#include "attnkit/dla.h"
#include "attnkit/linear.h"
#include "attnkit/positional.h"
